"""Runs the unmodified `eas-prediction` QueueClient, in its own process (it needs protobuf<=3.20, see
tests/eas_support.py). Usage: eas_client_run.py URL TOKEN QUEUE put BODY_JSON TAGS_JSON
                              eas_client_run.py URL TOKEN QUEUE watch COUNT [INDEX] [WINDOW]
                              eas_client_run.py URL TOKEN QUEUE attributes
Prints one JSON line per result, as the document's subscriber loop would see it."""

import json
import sys

from eas_prediction import QueueClient


def main() -> None:
    url, token, queue, action, *rest = sys.argv[1:]
    client = QueueClient(url, queue)
    client.set_token(token)
    client.init()
    if action == "put":
        index, request_id = client.put(rest[0].encode(), json.loads(rest[1]))
        print(json.dumps({"index": index, "request_id": request_id}), flush=True)
    elif action == "attributes":
        print(json.dumps(client.attributes()), flush=True)
    elif action == "watch":
        count = int(rest[0])
        index = int(rest[1]) if len(rest) > 1 else 0
        window = int(rest[2]) if len(rest) > 2 else 5
        watcher = client.watch(index, window, auto_commit=True)
        seen = 0
        for result in watcher.run():  # the document's loop
            print(json.dumps({"index": result.index, "task_id": result.tags.get("task_id"),
                              "tags": dict(result.tags), "data": json.loads(result.data)}), flush=True)
            seen += 1
            if seen == count:
                break
        watcher.close()


if __name__ == "__main__":
    main()
