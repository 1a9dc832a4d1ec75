"""The Telegram bot and the `digitbot` command line: wiring of recognizer and storage."""
