"""``python -m recipes RECIPE`` is ``python -m recipes.run RECIPE``."""

import sys

from .run import main

sys.exit(main())
