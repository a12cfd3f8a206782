"""robosuite environments built from robomimic-style ``env_args``, and raw observations from them.

One factory for every place a policy meets the simulator (data generation, evaluation, PPO
rollouts, the sim node), so they all build the same env with the same render settings.

Measured facts this module relies on (DESIGN.md, "Simulation facts"):
- ``seed=N`` passed to ``robosuite.make`` makes rollouts reproducible; ``np.random.seed`` does not.
- ``hard_reset=False`` makes resets 10-100x faster and keeps memory flat.
- robosuite renders images upside down (OpenGL convention); robomimic files store them upright.
- Material reflections are most of the render cost: Lift with 2 cameras at 96x96 ran at
  ~9 steps/s with reflections and ~22 steps/s without on the 2-core dev machine.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping, Sequence

import numpy as np

# EGL and OSMesa render at the same speed on CPU (DESIGN.md); EGL needs no X server.
os.environ.setdefault("MUJOCO_GL", "egl")

TASK_ALIASES: dict[str, str] = {
    "lift": "Lift",
    "can": "PickPlaceCan",
    "square": "NutAssemblySquare",
    "transport": "TwoArmTransport",
}

# Render profiles. A policy trained on images from one profile sees different pixels under
# another, so the profile is stored in the policy card and used everywhere the policy runs.
RENDER_PROFILES: dict[str, dict] = {
    # Reflections off (~2.4x faster rendering); shadows off (no measurable cost, but pinned so the
    # image does not change if a robosuite version turns them on).
    "fast": {"reflections": False, "shadows": False},
    # robosuite's own materials and lights, as in the official robomimic image datasets.
    "default": {"reflections": True, "shadows": True},
}


def canonical_task(task: str) -> str:
    """'lift' -> 'Lift'; robosuite names pass through unchanged."""
    return TASK_ALIASES.get(task.lower(), task)


def _robots_for(task: str) -> list[str]:
    return ["Panda", "Panda"] if task.startswith("TwoArm") else ["Panda"]


def default_env_args(
    task: str = "Lift",
    camera_names: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
    image_size: int = 96,
    horizon: int | None = None,
) -> dict:
    """robomimic-style env_args (the JSON stored in a dataset's ``data.attrs["env_args"]``).

    Args:
        task: robosuite env name or alias ("lift", "can", "square", "transport").
        camera_names: cameras to render; empty -> a low-dim env without an offscreen renderer.
        image_size: square camera image size in pixels.
        horizon: episode length in env steps; None leaves robosuite's default (ignored anyway,
            since ``ignore_done`` is True and callers cut episodes themselves).
    """
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    env_name = canonical_task(task)
    cams = list(camera_names)
    robots = _robots_for(env_name)
    env_kwargs: dict = {
        "robots": robots,
        "controller_configs": load_composite_controller_config(robot="Panda"),
        "control_freq": 20,
        "has_renderer": False,
        "has_offscreen_renderer": bool(cams),
        "use_camera_obs": bool(cams),
        "use_object_obs": True,
        "camera_names": cams,
        "camera_heights": int(image_size),
        "camera_widths": int(image_size),
        "camera_depths": False,
        "reward_shaping": False,
        "ignore_done": True,
    }
    if env_name == "TwoArmTransport":
        env_kwargs["env_configuration"] = "opposed"
    if horizon is not None:
        env_kwargs["horizon"] = int(horizon)
    return {"env_name": env_name, "env_version": robosuite.__version__, "type": 1, "env_kwargs": env_kwargs}


def _composite_controller_config(cfg: Mapping | None) -> dict | None:
    """Convert a robosuite<1.5 part config ({"type": "OSC_POSE", ...}) to 1.5's composite form.

    robomimic's official datasets were recorded with robosuite 1.2-1.4 and carry the old form;
    the arm part keeps its gains and limits, the gripper becomes 1.5's default GRIP part.
    """
    if cfg is None:
        return None
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    cfg = copy.deepcopy(dict(cfg))
    if "body_parts" in cfg or "type" not in cfg:
        return cfg
    # robosuite<1.5 spelled delta control as control_delta; 1.5 uses input_type.
    if "control_delta" in cfg:
        cfg["input_type"] = "delta" if cfg.pop("control_delta") else "absolute"
    return refactor_composite_controller_config(cfg, "Panda", ["right"])


def apply_render_profile(env, render_profile: str) -> None:
    """Set material reflectance and shadows on the loaded model (persists across soft resets)."""
    if render_profile not in RENDER_PROFILES:
        raise ValueError(f"unknown render_profile {render_profile!r}; choose one of {sorted(RENDER_PROFILES)}")
    profile = RENDER_PROFILES[render_profile]
    model = env.sim.model
    if not hasattr(env, "_d2ppo_default_reflectance"):
        env._d2ppo_default_reflectance = np.array(model.mat_reflectance, copy=True)
        env._d2ppo_default_castshadow = np.array(model.light_castshadow, copy=True)
    model.mat_reflectance[:] = env._d2ppo_default_reflectance if profile["reflections"] else 0.0
    model.light_castshadow[:] = env._d2ppo_default_castshadow if profile["shadows"] else 0
    env._d2ppo_render_profile = render_profile


def make_env(
    env_args: Mapping,
    seed: int | None = None,
    render_profile: str = "fast",
    camera_names: Sequence[str] | None = None,
    image_size: int | None = None,
    horizon: int | None = None,
):
    """Build the robosuite env that ``env_args`` describes.

    Args:
        env_args: robomimic env_args (ours or an official dataset's; old controller configs are converted).
        seed: passed to ``robosuite.make``; the same seed gives identical rollouts.
        render_profile: "fast" (reflections off) or "default"; must match the one a policy was trained with.
        camera_names: override the cameras (empty sequence -> low-dim env without a renderer).
        image_size: override camera height and width, pixels.
        horizon: override the episode horizon, env steps.

    Returns:
        The robosuite env (soft resets; ``env.reset()`` returns robosuite's obs dict).
    """
    import robosuite

    if render_profile not in RENDER_PROFILES:
        raise ValueError(f"unknown render_profile {render_profile!r}; choose one of {sorted(RENDER_PROFILES)}")
    env_name = canonical_task(env_args["env_name"])
    kwargs = copy.deepcopy(dict(env_args.get("env_kwargs", {})))
    kwargs.pop("env_name", None)
    if camera_names is not None:
        cams = list(camera_names)
        kwargs["camera_names"] = cams
        kwargs["has_offscreen_renderer"] = bool(cams)
        kwargs["use_camera_obs"] = bool(cams)
    if image_size is not None:
        kwargs["camera_heights"] = int(image_size)
        kwargs["camera_widths"] = int(image_size)
    if horizon is not None:
        kwargs["horizon"] = int(horizon)
    if not kwargs.get("camera_names"):
        # robosuite rejects use_camera_obs with no cameras, and a renderer without cameras is wasted memory.
        kwargs["use_camera_obs"] = False
        kwargs["has_offscreen_renderer"] = False
    kwargs["controller_configs"] = _composite_controller_config(kwargs.get("controller_configs"))
    if kwargs["controller_configs"] is None:
        from robosuite.controllers import load_composite_controller_config

        kwargs["controller_configs"] = load_composite_controller_config(robot="Panda")
    kwargs.setdefault("robots", _robots_for(env_name))
    kwargs["has_renderer"] = False
    kwargs["hard_reset"] = False
    kwargs["seed"] = seed
    kwargs = _drop_unknown_kwargs(env_name, kwargs)
    env = robosuite.make(env_name, **kwargs)
    apply_render_profile(env, render_profile)
    return env


def _drop_unknown_kwargs(env_name: str, kwargs: dict) -> dict:
    """Drop env_kwargs this robosuite version does not accept (files from older versions carry some)."""
    from robosuite.environments.base import REGISTERED_ENVS

    cls = REGISTERED_ENVS.get(env_name)
    if cls is None:
        raise ValueError(f"unknown robosuite env {env_name!r}; known: {sorted(REGISTERED_ENVS)}")
    accepted: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        accepted.update(params)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    return {k: v for k, v in kwargs.items() if k in accepted}


def images_are_upside_down() -> bool:
    """True under robosuite's default OpenGL image convention (rows bottom-to-top)."""
    from robosuite import macros

    return macros.IMAGE_CONVENTION == "opengl"


def raw_obs(obs: Mapping[str, np.ndarray], camera_names: Sequence[str]) -> dict[str, np.ndarray]:
    """robosuite obs -> raw observation dict (robomimic key names, as in ``d2ppo.obs``).

    Images (``<camera>_image``) come back upright uint8 [H, W, 3]; every low-dim array robosuite
    gives (``robot0_eef_pos`` [3] m, ``robot0_eef_quat`` [4] xyzw, ``robot0_gripper_qpos`` [2] m,
    ``robot0_joint_pos`` ...) is copied as float64. robosuite's ``object-state`` becomes ``object``,
    robomimic's name for it; the other ``*-state`` concatenations are dropped, as robomimic does.
    """
    flip = images_are_upside_down()
    out: dict[str, np.ndarray] = {}
    wanted_images = {f"{c}_image" for c in camera_names}
    for key, value in obs.items():
        if key.endswith("_image"):
            if key not in wanted_images:
                continue
            img = np.asarray(value)
            if img.dtype != np.uint8:
                img = np.clip(img, 0, 255).astype(np.uint8)
            out[key] = np.ascontiguousarray(img[::-1] if flip else img)
        elif key.endswith("_depth"):
            continue
        elif key == "object-state":
            out["object"] = np.array(value, dtype=np.float64, copy=True)
        elif key.endswith("-state"):
            continue  # robosuite's concatenations of keys already copied (robomimic drops them too)
        else:
            out[key] = np.array(value, dtype=np.float64, copy=True)
    for key in wanted_images:
        if key not in out:
            raise KeyError(f"robosuite obs has no {key!r}; was the env made with camera {key[:-6]!r}?")
    return out


def is_success(env) -> bool:
    """The task's own success check (robosuite ``_check_success``)."""
    return bool(env._check_success())


def benchmark_steps_per_second(
    task: str = "Lift",
    camera_names: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
    image_size: int = 96,
    render_profile: str = "fast",
    steps: int = 100,
    seed: int = 0,
) -> float:
    """Env steps per second (random actions, obs built each step) in this process."""
    import time

    env = make_env(default_env_args(task, camera_names, image_size), seed=seed, render_profile=render_profile)
    rng = np.random.default_rng(seed)
    env.reset()
    for _ in range(5):  # warm-up: first renders allocate buffers
        env.step(rng.uniform(-1, 1, env.action_dim))
    t0 = time.perf_counter()
    for _ in range(steps):
        raw_obs(env.step(rng.uniform(-1, 1, env.action_dim))[0], camera_names)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


if __name__ == "__main__":
    # python -m d2ppo.envs.robosuite_env [task] [steps]: steps/s per render profile (a benchmark script).
    import sys

    _task = canonical_task(sys.argv[1] if len(sys.argv) > 1 else "Lift")
    _steps = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    print(f"{_task} no cameras: {benchmark_steps_per_second(_task, (), steps=_steps * 5):.1f} steps/s")
    for _profile in RENDER_PROFILES:
        _rate = benchmark_steps_per_second(_task, ("agentview", "robot0_eye_in_hand"), 96, _profile, _steps)
        print(f"{_task} 2 cameras 96x96, render profile {_profile!r}: {_rate:.1f} steps/s")


def render_frame(env, camera: str = "agentview", size: int = 256) -> np.ndarray:
    """An upright uint8 [size, size, 3] frame for videos, independent of the policy's cameras.

    A low-dim env has no offscreen renderer; one is added on first use, configured as robosuite configures
    its own (visual meshes only, no collision geometry).
    """
    sim = env.sim
    if getattr(sim, "_render_context_offscreen", None) is None:
        from robosuite.utils.binding_utils import MjRenderContextOffscreen

        ctx = MjRenderContextOffscreen(sim, device_id=-1)
        ctx.vopt.geomgroup[0] = 1 if getattr(env, "render_collision_mesh", False) else 0
        ctx.vopt.geomgroup[1] = 1 if getattr(env, "render_visual_mesh", True) else 0
    frame = np.asarray(sim.render(camera_name=camera, width=size, height=size))
    return np.ascontiguousarray(frame[::-1] if images_are_upside_down() else frame)
