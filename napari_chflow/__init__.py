"""napari-chflow: 3D Cahn-Hilliard spinodal decomposition and its CRNN surrogate.

Library modules (Qt-free): :mod:`physics`, :mod:`seeds`, :mod:`metrics`, :mod:`io`,
:mod:`dataset`, :mod:`model`, :mod:`training`, :mod:`cli`. The napari plugin lives in
:mod:`napari_chflow.widgets` and the npe2 hooks (``napari.yaml``).
"""

__version__ = "0.1.0"
