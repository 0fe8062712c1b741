"""Serving: the SavedModel writer (`export`), its request checks (`requests`), reading an
export back (`reader`)."""
