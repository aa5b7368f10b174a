"""HDF5 files from users are data, never pointers to other files.

HDF5 lets a dataset keep its bytes in other files (external storage: any path, e.g.
/etc/passwd read back as "ids"), lets a group entry be a link into another file
(external link), and lets a dataset be a view over datasets of other files
(virtual dataset). Any of them turns "read this embeddings file" into "read that
file on the server". Every HDF5 file gallery reads from a user (embeddings, query
files, evaluation embeddings, old-feature caches, training arrays, face encodings,
stores) is opened through `open_input` or checked with `refuse_pointers` first:
one line names the first such object and nothing is read.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from gallery.errors import BadInput


def _problem(obj: h5py.Dataset) -> str | None:
    if obj.is_virtual:
        return "is a virtual dataset (a view over other files)"
    external = obj.external
    if external:
        names = ", ".join(str(e[0].decode() if isinstance(e[0], bytes) else e[0]) for e in external[:3])
        return f"uses HDF5 external storage ({names})"
    return None


def find_pointer(h5: h5py.Group) -> str | None:
    """The first external link, external-storage or virtual dataset in the file, or None.

    Walks links without following soft or external ones (a soft link only names an
    object of this file, which the walk reaches by its hard link anyway)."""
    seen: set = set()
    stack: list[h5py.Group] = [h5]
    while stack:
        group = stack.pop()
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{group.name.rstrip('/')}/{name}"
            if isinstance(link, h5py.ExternalLink):
                return f"{where} is an external link to {link.filename}:{link.path}"
            if isinstance(link, h5py.SoftLink):
                continue
            obj = group.get(name)
            if isinstance(obj, h5py.Dataset):
                problem = _problem(obj)
                if problem:
                    return f"dataset {where} {problem}"
            elif isinstance(obj, h5py.Group):
                address = h5py.h5o.get_info(obj.id).addr
                if address not in seen:  # hard links can make cycles
                    seen.add(address)
                    stack.append(obj)
    return None


def refuse_pointers(h5: h5py.File, path: str | Path) -> h5py.File:
    """Close `h5` and raise BadInput if it points outside itself; return it otherwise."""
    try:
        problem = find_pointer(h5)
    except (RuntimeError, KeyError, OSError, ValueError) as exc:  # h5py on damaged metadata
        h5.close()
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else exc.__class__.__name__
        raise BadInput(f"{path}: not a readable HDF5 file (damaged structure: {reason})") from None
    if problem is not None:
        h5.close()
        raise BadInput(f"{path}: {problem}; refused (an input HDF5 file must hold its own data)")
    return h5


def open_input(path: str | Path) -> h5py.File:
    """Open a user's HDF5 file read-only, refusing it if it points at other files.

    OSError/ValueError from h5py (not HDF5, truncated) propagate for the caller to word."""
    return refuse_pointers(h5py.File(path, "r", locking=False), path)
