"""Input rules shared by every task's ``predict`` and readers: one place for layouts, integer
PCM and image dtypes, size caps read from headers before decoding, the audio reader and
resampler, the image and volume reader, and frame-by-frame video reading.

Submodules: :mod:`mmoe.inputs.audio`, :mod:`mmoe.inputs.image`, :mod:`mmoe.inputs.video`.
A task's ``io.py`` calls them; it does not re-implement them.
"""
