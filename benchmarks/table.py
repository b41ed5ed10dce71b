"""Print benchmarks/results.json as the Markdown table of RESULTS.md, with ratios."""
import json
import sys

with open(sys.argv[1]) as f:
    data = json.load(f)
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
print()
print("machine:", json.dumps(data["machine"]))
