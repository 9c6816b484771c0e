"""Reading the YAML files users write (spaces, experiments, configs, study.yaml).

``yaml.safe_load`` only. A missing file is a FileNotFoundError and a syntax error a ValueError
(or the caller's subclass), each naming the file and what to do, never a parser traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, what: str, hint: str = "", error: type[ValueError] = ValueError,
              mapping: bool = True) -> Any:
    """The parsed contents of ``path``, a ``what`` (e.g. "search space file").

    Args:
        path: the file.
        what: what the file is, for messages.
        hint: where such files are or how to make one, appended to the not-found message.
        error: the ValueError subclass raised for bad YAML or a non-mapping.
        mapping: require a mapping at the top level (an empty file gives ``{}``).
    """
    p = Path(path)
    if p.is_dir():
        raise error(f"{p}: is a directory, not a {what}" + (f"; {hint}" if hint else ""))
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what} (does not exist)" + (f"; {hint}" if hint else ""))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the {what} "
                    "as UTF-8") from None
    if mapping:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise error(f"{p}: expected a mapping (key: value lines) at the top level of the "
                        f"{what}, got {type(data).__name__}")
    return data
