#!/usr/bin/env python
"""Convert a released ZegFormer or zsseg.baseline ("simple baseline") checkpoint into a zegseg checkpoint.

Examples:
  python tools/convert_official_checkpoint.py zegformer_R101_bs32_60k_vit16_coco-stuff.pth zegformer_coco.pth \\
      --config configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml
  python tools/convert_official_checkpoint.py zsseg_coco_zero_shot.pth two_stage_coco.pth \\
      --config configs/coco_stuff/two_stage_R101_vit16.yaml
Then run zegseg with that config and MODEL.WEIGHTS <output>.

Every tensor of the official file is accounted for (key tables in zegseg/checkpoint/official.py): network weights
are renamed into the output; a frozen CLIP stored in the file is left out (zegseg loads CLIP from MODEL.CLIP.NAME;
--clip-out writes it as a CLIP file); a learned prompt is written next to the output (for
MODEL.CLIP.PROMPT_LEARNER.WEIGHTS); values zegseg reads from its config are reported (and checked against --config).
A tensor zegseg has no place for stops the conversion. Files are read safely (torch weights_only; .pkl: numpy arrays
only).

Exit status: 0 converted; 1 the checkpoint cannot be converted or does not fit --config; 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from zegseg.checkpoint.official import (
    FORMATS,
    OfficialCheckpointError,
    config_mismatches,
    convert_official_state_dict,
    load_official_state_dict,
    save_conversion,
)
from zegseg.engine.setup_config import ConfigError, load_config


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="official checkpoint (.pth or detectron2 .pkl)")
    parser.add_argument("output", type=Path, help="zegseg checkpoint to write (.pth)")
    parser.add_argument("--format", choices=["auto", *FORMATS], default="auto", help="official format (auto: by keys)")
    parser.add_argument("--config", help="zegseg config the checkpoint will be used with: checked against it")
    parser.add_argument("--clip-out", type=Path, help="also write the checkpoint's frozen CLIP to this file")
    parser.add_argument("--prompt-out", type=Path, help="learned prompt file (default: <output>_prompt.pth)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        state = load_official_state_dict(args.input)
        conversion = convert_official_state_dict(state, None if args.format == "auto" else args.format)
        problems = config_mismatches(conversion, load_config(args.config)) if args.config else []
        if problems:
            raise OfficialCheckpointError(f"{args.config} does not fit this checkpoint: {'; '.join(problems)}")
        prompt_out = args.prompt_out
        if conversion.prompt_ctx is not None and prompt_out is None:
            prompt_out = args.output.with_name(f"{args.output.stem}_prompt.pth")
        outputs = [p for p in (args.output, args.clip_out, prompt_out) if p is not None]
        existing = [str(p) for p in outputs if p.exists()]
        if existing and not args.force:
            raise OfficialCheckpointError(f"{', '.join(existing)} already exist(s); use --force to overwrite")
        missing_dirs = sorted({str(p.parent) for p in outputs if not p.parent.is_dir()})
        if missing_dirs:
            raise OfficialCheckpointError(f"output folder(s) {', '.join(missing_dirs)} do not exist")
        written = save_conversion(conversion, args.output, clip_output=args.clip_out, prompt_output=prompt_out)
    except (OfficialCheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in conversion.summary():
        print(line)
    if conversion.clip and args.clip_out is None:
        print("the frozen CLIP was not written (--clip-out FILE writes it)")
    for line in written:
        print(f"wrote {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
