"""What every layer of ncslim uses and nothing of ncslim: reading user paths within bounds
(``regular``), writes that never leave a half-written file (``files``), run-folder locks
(``liverun``), text made safe to print (``escape``), torchrun
(``distributed``) and the progress display (``progress``). Modules here import nothing of
ncslim outside this package (docs/architecture.md)."""
