"""--probe: real connections from the client's position, beside the rules' prediction.

observed.py parses what the probe and the node's conntrack printed, fit.py tests the split,
judge.py turns prediction and observation into findings and the `observed` JSON block;
script.py holds the probe's shell script and run.py the pods that run it.
"""
