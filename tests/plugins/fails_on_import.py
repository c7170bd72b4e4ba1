"""A plug-in module whose import fails: params validation must report it under the plug-in's key."""

raise ImportError("this module needs a package that is not installed")
