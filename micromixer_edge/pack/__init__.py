from .bundle import make_bundle

__all__ = ["make_bundle"]
