import os
import sys
from pathlib import Path

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")
sys.path.insert(0, str(Path(__file__).resolve().parent))
