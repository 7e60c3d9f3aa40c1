"""agent: a GUI agent loop. Typed actions, parsers for the released model's desktop, mobile
and set-of-marks web formats, prompt builders, and environments for browsers (Playwright),
Linux desktops (X11) and Android phones (adb)."""

from .loop import Agent
from .parsing import ParseError, parse_response, serialise_action
from .policy import OpenAIPolicy, ScriptedPolicy
from .trajectory import Trajectory
from .visual_page import VisualPage

__all__ = ["Agent", "OpenAIPolicy", "ParseError", "ScriptedPolicy", "Trajectory", "VisualPage", "parse_response",
           "serialise_action"]
