"""``vispre --help`` must not import torch & co.: building the parser stays instant (issue 16)."""

import json
import subprocess
import sys

HEAVY = ("torch", "timm", "webdataset", "accelerate", "torchvision", "open_clip", "datasets", "numpy")


def test_building_the_parser_imports_no_heavy_module():
    code = ("import sys, json, vispre.cli; vispre.cli.build_parser(); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_help_of_every_subcommand_imports_no_heavy_module():
    # each sub-command's parser is built by build_parser; --help exits before run() imports anything heavy
    code = ("import sys, json, vispre.cli\n"
            "for argv in (['--help'], ['pretrain', '--help'], ['eval', '--help'], ['shards', 'stream', '--help'],"
            " ['recipes', '--help']):\n"
            "    try:\n        vispre.cli.main(argv)\n    except SystemExit:\n        pass\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
