"""Print the results files benchmarks/run names (results.json: block-file
against the stock script; results-dm.json: the device-mapper types;
results-lvsnap-tap.json: block-lvsnap and block-tap; results-storm.json:
the boot storm; results-network.json: block-nbd) as the Markdown tables
of RESULTS.md, with ratios."""
import json
import os
import sys


def stock_table(data):
    print("| target | other vbds | stock add+remove (s) | block-file add+remove (s) | ratio | "
          "processes per add (stock / ours) | xenstore requests per add (stock / ours) |")
    print("|---|---|---|---|---|---|---|")
    rows = {(r["target"], r["other_vbds"], r["script"]): r for r in data["results"]}
    for target, count in sorted({(r["target"], r["other_vbds"]) for r in data["results"]}):
        stock, ours = rows[(target, count, "stock block")], rows[(target, count, "xenblock block-file")]
        ratio = ours["add_remove_median_s"] / stock["add_remove_median_s"]
        print(f"| {'image file' if target == 'file' else 'block device'} | {count} | "
              f"{stock['add_remove_median_s']:.2f} | {ours['add_remove_median_s']:.2f} | {ratio:.2f} | "
              f"{stock['processes_per_add']} / {ours['processes_per_add']} | "
              f"{stock['xenstore_requests_per_add']} / {ours['xenstore_requests_per_add']} |")


def latency_table(data):
    print("| disk | add (s) | remove (s) | add+remove (s) | ratio to block-file | processes per add | "
          "xenstore requests per add |")
    print("|---|---|---|---|---|---|---|")
    for r in data["latency"]:
        print(f"| {r['case']} | {r['add_median_s']:.2f} | {r['remove_median_s']:.2f} | "
              f"{r['add_remove_median_s']:.2f} | {r['ratio_to_block_file']:.2f} | {r['processes_per_add']} | "
              f"{r['xenstore_requests_per_add']} |")
    print()


def dm_tables(data):
    latency_table(data)
    if "throughput" not in data:
        return
    t = data["throughput"]
    print(f"| guest, O_DIRECT, bs=1M, {t['mib_per_dd']} MiB per dd, {t['rounds']} rounds | "
          "block-file (MB/s) | block-cow (MB/s) | ratio |")
    print("|---|---|---|---|")
    for operation, s in t["summary"].items():
        print(f"| {operation} | {s['block-file_median_mb_s']:.1f} | {s['block-cow_median_mb_s']:.1f} | "
              f"{s['ratio']:.2f} |")


def lvsnap_tap_tables(data):
    latency_table(data)
    if "throughput" not in data:
        return
    t = data["throughput"]
    names = list(next(iter(t["mb_per_s"].values())))  # the guest's disks, xvda first
    print(f"| guest, O_DIRECT, bs=1M, {t['mib_per_dd']} MiB per dd, {t['rounds']} rounds | "
          + " | ".join(f"{name} (MB/s)" for name in names) + " | block-tap / block-file | block-tap / qdisk |")
    print("|---|" + "---|" * (len(names) + 2))
    for operation, s in t["summary"].items():
        rates = " | ".join(f"{s[name + '_median_mb_s']:.1f}" for name in names)
        print(f"| {operation} | {rates} | {s['tap_to_file']:.2f} | {s.get('tap_to_qdisk', float('nan')):.2f} |")
    if "qdisk_error" in t:
        print("\nqdisk did not run:", t["qdisk_error"][-500:])


def storm_table(data):
    print("| at once | script | add wall (s) | ratio to stock | remove wall (s) | failed runs |")
    print("|---|---|---|---|---|---|")
    for r in data["storm"]:
        print(f"| {r['at_once']} | {r['script']} | {r['add_wall_median_s']:.2f} | {r['add_ratio_to_stock']:.2f} | "
              f"{r['remove_wall_median_s']:.2f} | {r['failed_runs']} of {2 * r['at_once'] * r['repeats']} |")


TABLES = {"results.json": stock_table, "results-dm.json": dm_tables, "results-lvsnap-tap.json": lvsnap_tap_tables,
          "results-storm.json": storm_table, "results-network.json": latency_table}


def main(paths):
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        print()
        TABLES[os.path.basename(path)](data)
        print()
        print("machine:", json.dumps(data["machine"]))


if __name__ == "__main__":
    main(sys.argv[1:])
