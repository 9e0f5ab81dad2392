"""From a trained model to a deployed artifact: ``sim2real export`` and ``sim2real predict``.

* :mod:`pipeline.ship.image_inputs`: the images to check with or predict on, decoded as prepare does;
* :mod:`pipeline.ship.shippable`: an exported task model or generator, opened with one-line errors;
* :mod:`pipeline.ship.formats`: TorchScript and ONNX, written to bytes and run from them;
* :mod:`pipeline.ship.contract`: the preprocessing JSON written beside each exported file;
* :mod:`pipeline.ship.export`: export, check against PyTorch on real images, write atomically;
* :mod:`pipeline.ship.predict`: a folder of images to a predictions CSV (classes) or COCO JSON (boxes);
* :mod:`pipeline.ship.cli`: the ``sim2real`` command (export, predict, translate).
"""
