"""autokd's built-in distillation methods, one file each, installed as ``autokd.methods.builtin``.

Every module here not starting with ``_`` is imported the first time the method registry is used, and
registers its classes with ``@register_method``. Adding a method is adding a file.
"""
