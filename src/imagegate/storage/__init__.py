"""Where produced images live, behind signed expiring URLs."""

from imagegate.storage.local import LocalStorage, StoredImage, UrlSigner

__all__ = ["LocalStorage", "StoredImage", "UrlSigner"]
