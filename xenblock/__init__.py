"""xenblock: Xen vbd hotplug scripts that build guest disks at domain start.

Layout (one job per module):
  hotplug    the entry point every block-<type> script calls (libxl contract)
  lifecycle  add/remove of one disk: leftovers, sharing check, build, rollback
  types/     one module per disk type, named in types.NAMES
  state      the teardown record per backend path under /run/xenblock
  deadline   the run's one deadline, from libxl's time limits
  locks      flock-based locks that never outlive or leak into children
  xenstore   the one xenstore connection of a run (its wire protocol)
  loop       loop devices through the kernel's ioctls
  blockdev   facts about block devices from sysfs and /proc
  source     what a target path names, resolved and opened once
  sharing    who else uses an image, and whether that forbids this request
  procfs     who holds a lock or a device, for errors
  config     /etc/xenblock/xenblock.conf
  log        one line per add/remove to xen-hotplug.log and syslog
  upgrade    a run holds the installed code; a package upgrade waits for it
"""
