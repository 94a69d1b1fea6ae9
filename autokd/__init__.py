"""autokd: search knowledge-distillation settings for the best small INT8 student of a teacher."""

__version__ = "0.1.0"
