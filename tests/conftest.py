"""Suite-wide: ``tests/`` is on sys.path (pytest's rootdir conftest insertion), so helpers such as
``ros_domains`` import by name from every test folder."""
