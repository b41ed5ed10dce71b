"""xl's own readers, called in this process: libxlutil (the config file and
disk entry parser xl links) and libxenlight's JSON of a disk, through
ctypes. Nothing of Xen needs to run: these are pure functions of their
input, so the host tier can hold xenblock's readers to xl's on every run;
tests/xen/test_xl_config.py holds this harness to `xl create -n`.
"""
import ctypes
import json
import os
import tempfile

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.fopen.restype = ctypes.c_void_p
_libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.fclose.argtypes = [ctypes.c_void_p]
_libxl = ctypes.CDLL("libxenlight.so.4.17")
_libxl.libxl_device_disk_init.argtypes = [ctypes.c_void_p]
_libxl.libxl_device_disk_to_json.restype = ctypes.c_char_p
_libxl.libxl_device_disk_to_json.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_xlu = ctypes.CDLL("libxlutil.so.4.17")
_xlu.xlu_cfg_init.restype = ctypes.c_void_p
_xlu.xlu_cfg_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_xlu.xlu_cfg_destroy.argtypes = [ctypes.c_void_p]
_xlu.xlu_disk_parse.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
_xlu.xlu_cfg_readdata.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
# libxl_device_disk is about 150 bytes in 4.17; room to spare.
DISK_BYTES = 4096


def read_disk(spec):
    """(the disk as libxl's JSON, a dict; None if xl refuses the entry,
    what xl reported)."""
    disk = ctypes.create_string_buffer(DISK_BYTES)
    _libxl.libxl_device_disk_init(disk)
    specs = (ctypes.c_char_p * 1)(spec.encode())
    status, report = _with_config(lambda cfg: _xlu.xlu_disk_parse(cfg, 1, specs, disk))
    if status != 0:
        return None, report
    return json.loads(_libxl.libxl_device_disk_to_json(None, disk)), report


def read_config(text):
    """(whether xl reads the config text, what it reported)."""
    data = text.encode()
    status, report = _with_config(lambda cfg: _xlu.xlu_cfg_readdata(cfg, data, len(data)))
    return status == 0, report


def _with_config(call):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "report").encode()
        report = _libc.fopen(path, b"w")
        cfg = _xlu.xlu_cfg_init(report, b"config")
        try:
            status = call(cfg)
        finally:
            _xlu.xlu_cfg_destroy(cfg)
            _libc.fclose(report)
        with open(path) as f:
            return status, f.read()
