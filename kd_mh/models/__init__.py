"""Models: `teacher` (faces), `pretrained` (FER2013 weights for the teacher), `pooling` (masked).

Submodules are imported explicitly (`from kd_mh.models import teacher`), so importing this package
loads nothing.
"""
