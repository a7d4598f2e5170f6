"""``inglenook doctor [--json]``: this machine's CPU features, the ggml CPU backend and buffer types in use,
the AMX probe's verdict, GPUs/CUDA, disk in the models folder, Chromium, the loaders (webui/doctor.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from webui.doctor import format_report, report


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="what this machine offers: CPU features, llama.cpp build, GPU, disk, Chromium")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="models folder (default: ./models)")
    p.add_argument("--user-data", type=Path, default=Path("user_data"), help="user data (default: ./user_data)")


def run(args: argparse.Namespace) -> int:
    found = report(args.models_dir, args.user_data)
    print(json.dumps(found, indent=2) if args.json else format_report(found))
    return 0
