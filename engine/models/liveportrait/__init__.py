"""Our implementation of the five LivePortrait networks, loading the official weights unchanged."""

from engine.models.liveportrait.appearance import AppearanceFeatureExtractor
from engine.models.liveportrait.decoder import SPADEDecoder
from engine.models.liveportrait.loading import (
    WEIGHT_FILES,
    LivePortraitNetworks,
    fold_spectral_norm,
    load_base_model,
    load_liveportrait,
    load_retargeting,
    write_random_weights,
)
from engine.models.liveportrait.motion import MotionExtractor, bins_to_degrees
from engine.models.liveportrait.stitching import RetargetingMLP
from engine.models.liveportrait.warping import WarpingNetwork

__all__ = [
    "WEIGHT_FILES",
    "AppearanceFeatureExtractor",
    "LivePortraitNetworks",
    "MotionExtractor",
    "RetargetingMLP",
    "SPADEDecoder",
    "WarpingNetwork",
    "bins_to_degrees",
    "fold_spectral_norm",
    "load_base_model",
    "load_liveportrait",
    "load_retargeting",
    "write_random_weights",
]
