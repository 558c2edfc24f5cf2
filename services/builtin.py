"""The services that ship with vdag; importing a module registers its services."""
from services import (  # noqa: F401
    counting,
    detection,
    faces,
    probe,  # noqa: F401
    render,
)
