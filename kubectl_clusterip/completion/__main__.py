"""`python -m kubectl_clusterip.completion WORD...` answers like the kubectl hook."""

import sys

from kubectl_clusterip.completion import main

sys.exit(main())
