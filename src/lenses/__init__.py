"""The lens room: reading a model's states through a readout (Nostalgebraist's logit lens, Belrose et al.'s tuned
lens, de Heer Kloots & Zuidema's CTC lens, Langedijk et al.'s DecoderLens).

- :mod:`src.lenses.ctc`: the trained CTC head and the tuned CTC lens (models, training on the activation cache,
  atomic files, plain / tuned readouts, PER on a cache);
- :mod:`src.lenses.logit`: Whisper's decoder states read through its own final norm and output head;
- :mod:`src.lenses.scoring`: what the lenses' transcripts are scored against (reference texts) and how (word and
  character edit counts), shared with the SAE evaluation.

The analyses (``src/analyses/ctc_lens.py``, ``decoder_lens.py``, ``logit_lens.py``) hold options, run the lens over a
corpus and return a result; the machinery lives here. Nothing here imports ``src/analyses/`` or ``src/jobs/``.
"""
