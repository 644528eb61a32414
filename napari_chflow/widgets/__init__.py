"""napari dock widgets of napari-chflow (Qt; registered in ``napari_chflow/napari.yaml``).

- :mod:`.seed` "Seed volume": initial conditions from :mod:`napari_chflow.seeds`;
- :mod:`.evolve` "Evolve and compare": solver and CRNN side by side, streamed into layers;
- :mod:`.traces` "Traces": RMSE, interface displacement, F/V and mass vs t, live;
- :mod:`.train` "Train surrogate": CRNN training with a live loss curve.

Nothing is imported here, so ``import napari_chflow.widgets`` does not pull in Qt.
"""
