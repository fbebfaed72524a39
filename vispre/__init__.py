"""vispre: visual pretraining with RL value objectives."""
__version__ = "0.1.0"
