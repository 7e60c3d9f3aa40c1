"""vlm: the model. A native-resolution ViT encoder and an MLP projector feeding a
Mixture-of-Experts language model with 3-axis M-RoPE; loads and saves the released
GLM-4.5V / GLM-4.1V checkpoint layout unchanged."""

from .config import VLMConfig
from .engine import Generation, GenerationStream
from .generation import GenerationOptions
from .processor import Processor
from .vlm import VLM

__all__ = ["VLM", "VLMConfig", "Processor", "Generation", "GenerationStream", "GenerationOptions"]
