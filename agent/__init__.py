"""agent: a GUI agent loop. Typed actions, parsers for the released model's desktop, mobile
and set-of-marks web formats, prompt builders, and environments for browsers (Playwright),
Linux desktops (X11) and Android phones (adb)."""
