"""MuseTalk (TMElyralab/MuseTalk v1.5 and v1.0) for the lip-sync room.

The numerics that define the output (audio.py speech windows, geometry.py face box and VAE pixels, blend.py
paste-back) are kept apart from the networks and their loading, so each rule can be checked on the CPU against
hand-worked values and against upstream's own functions.
"""
