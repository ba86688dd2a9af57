"""Names of the dimensions and variables of every labelled array in the package.

Defined once here so that labelled code refers to dimensions by name, never by
axis number.

=============  ==========================================================
name           meaning
=============  ==========================================================
``window``     one waveform window, hence one spectrogram (the sample axis)
``frequency``  frequency bin of a spectrogram, in Hz
``time``       time frame of a spectrogram, in s from the window start
``pattern``    NMF spectral pattern (column of the dictionary ``W``)
``state``      hidden state of the HMM
``next_state`` destination state of a transition
=============  ==========================================================
"""

from __future__ import annotations

WINDOW = "window"
FREQUENCY = "frequency"
TIME = "time"
PATTERN = "pattern"
STATE = "state"
NEXT_STATE = "next_state"

#: dims of the ``spectrogram`` variable of a spectrogram store
SPECTROGRAM_DIMS = (WINDOW, FREQUENCY, TIME)
#: dims of the ``activation`` variable written by the NMF transform
ACTIVATION_DIMS = (WINDOW, PATTERN, TIME)
#: dims of ``fingerprint`` and ``transition`` written by the HMM transform
TRANSITION_DIMS = (WINDOW, STATE, NEXT_STATE)
#: dims of ``state_probability`` written by the HMM transform
STATE_SEQUENCE_DIMS = (WINDOW, STATE, TIME)

SPECTROGRAM = "spectrogram"
ACTIVATION = "activation"
FINGERPRINT = "fingerprint"
TRANSITION = "transition"
STATE_PROBABILITY = "state_probability"
