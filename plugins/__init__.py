"""Built-in distillation plugins: every module here is imported by autokd and registers its classes."""
