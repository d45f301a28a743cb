"""The numerics every backend shares, written once: the float32 constants of the vector math
(``constants``), the row reductions against a small emitter interface (``reductions``) and the
lowering of the IR's scalar ops (``scalars``). A backend supplies an emitter that spells these
operations (the C backend: ``V_*`` macros and ``sg_*`` helpers; the TVM backend: TIR lets).
"""
