"""Save the README's screenshot of the search page (``docs/screenshot.png``).

    python scripts/screenshot.py                  # docs/screenshot.png
    python scripts/screenshot.py /tmp/page.png    # elsewhere

Runs the browser tests that add the shipped photos and search by one of them
(``tests/test_browser.py``, headless Debian Chromium over the app in-process, no Ray), which
save the first screen of results at desktop width where ``IMGSEARCH_SCREENSHOT`` says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Run the two tests; their exit status is this script's."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else ROOT / "docs" / "screenshot.png").resolve()
    env = {**os.environ, "IMGSEARCH_SCREENSHOT": str(target), "HF_HUB_OFFLINE": "1"}
    tests = "add_images_through_the_file_chooser or search_by_image_finds_the_original_first"
    command = [sys.executable, "-m", "pytest", "-q", "tests/test_browser.py", "-k", tests]
    code = subprocess.call(command, cwd=ROOT, env=env)
    if code == 0:
        print(f"saved {target}")
    return code


if __name__ == "__main__":
    sys.exit(main())
