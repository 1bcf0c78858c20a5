"""Run as a script by test_fuzz_readers: feed every file (or DICOM folder) of a folder to
medattn's readers and write one JSON line per input to the results file, with a "begin"
line first, so that a crash or a hang names the input it happened on.

A memory ceiling (RLIMIT_AS) turns any allocation far above the inputs' sizes into an
error the test sees; SimpleITK runs on one thread."""

import json
import resource
import sys
import traceback
from pathlib import Path

MEMORY_LIMIT = 3 << 30  # far above what these small inputs need


def read(path: Path) -> None:
    """The readers medattn uses on user files: image reading (+ the NIfTI check), DICOM series."""
    if path.is_dir():
        from medattn.preprocess.dicom import read_series, select_series

        read_series(select_series(path))
        return
    from medattn.data.io import check_nifti_file, read_image

    read_image(path)
    check_nifti_file(path)


def outcome(path: Path) -> dict:
    from medattn.data.io import ImageReadError
    from medattn.preprocess.common import ConversionError

    try:
        read(path)
        return {"result": "read"}
    except (ImageReadError, ConversionError) as err:  # medattn's own errors (NonFiniteImageError included)
        return {"result": "refused", "message": str(err).splitlines()[0][:300]}
    except BaseException as err:  # anything else is a finding: name it
        return {"result": "unexpected", "error": type(err).__name__, "message": str(err)[:300],
                "traceback": traceback.format_exc()[-1500:]}


def main(folder: str, results: str) -> None:
    import SimpleITK as sitk

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    with open(results, "w", encoding="utf-8", buffering=1) as out:
        for path in sorted(Path(folder).iterdir()):
            out.write(json.dumps({"begin": path.name}) + "\n")
            out.write(json.dumps({"input": path.name, **outcome(path)}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
