import os
import sys

# Tests import the package from the checkout (the VM tier uses the installed one).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
