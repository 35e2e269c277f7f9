"""`python -m kubectl_clusterip.completion WORD...` answers like the hook; --regenerate
rewrites commands.py from the click commands."""

import sys

if sys.argv[1:] == ["--regenerate"]:
    from kubectl_clusterip.completion.generate import regenerate

    print("updated" if regenerate() else "up to date")
else:
    from kubectl_clusterip.completion import main

    sys.exit(main())
