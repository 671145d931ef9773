"""Class-incremental learning under a memory budget: memoryless LUCIR (``protocol``), and
architectures judged by it, ``nat cil`` (``judge``)."""
