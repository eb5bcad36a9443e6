"""`python -m vllm_variants.audit TARGET [--sm SM] [--json] ...` where Invoke is not installed."""

import sys

from .cli import main

sys.exit(main())
