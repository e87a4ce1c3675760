"""devserver: GPU devservers on GCE, Azure, AWS and OpenStack from one declarative spec."""

__version__ = "0.1.0"
