"""Live runs (issue 14): inputs read as they arrive, which may stall, vanish and come back.

``specs`` parses INPUT into a typed spec, ``source`` reads a live spec on a demux thread of its
own (deadlines, stall detection, reconnects), ``timeline`` keeps the output's timestamps
increasing across wraps, discontinuities and reconnects, ``inputs`` chooses the source.
"""
