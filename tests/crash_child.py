"""A child process for the crash tests: one correction or tier move, paused at a step until it is SIGKILLed.

Run as ``python -m tests.crash_child INSTANCE OPERATION STEP [ARGS...]`` from the project root.
OPERATION: ``move STUDY_UID PATIENT_ID TOKEN`` and ``merge SOURCE TARGET TOKEN`` go through the JSON API
(the request's own commit point); ``tier PATIENT_PK`` is what the scheduler's sweep calls.
STEP: ``mid-write`` pauses after the first new file is durably written (before the commit);
``after-commit`` pauses once the transaction committed, before the replaced files are deleted.
The pause is injected here, in the child, by wrapping the storage methods: the code under test is unchanged.
"""

from __future__ import annotations

import sys
import time


def _pause() -> None:
    print("PAUSED", flush=True)
    time.sleep(600)


def main() -> None:
    instance, operation, step, *args = sys.argv[1:]
    from archive_core import filechanges
    from archive_core.storage.filesystem import FilesystemStore
    from backoffice import create_app

    if step == "mid-write":
        for name in ("put",):  # put_bytes and put_file write through put
            original = getattr(FilesystemStore, name)

            def wrapped(self, *a, _original=original, **k):
                result = _original(self, *a, **k)
                _pause()
                return result

            setattr(FilesystemStore, name, wrapped)
    elif step == "after-commit":
        finish = filechanges.Intent.finish

        def paused_finish(self, archive, *, committed):
            if committed and self.pairs:
                _pause()
            return finish(self, archive, committed=committed)

        filechanges.Intent.finish = paused_finish
    app = create_app({"INSTANCE_PATH": instance, "STORAGE_MIN_FREE_BYTES": 0})
    if operation == "tier":
        app.extensions["archivage"].move_patient_to_archive(int(args[0]))
    else:
        headers = {"Authorization": f"Bearer {args[2]}"}
        if operation == "move":
            response = app.test_client().post(f"/api/v1/studies/{args[0]}/move", headers=headers,
                                              json={"patient_id": args[1], "reason": "erreur d'accueil"})
        else:
            response = app.test_client().post(f"/api/v1/patients/{args[0]}/merge",
                                              json={"into_patient_id": args[1], "reason": "doublon"}, headers=headers)
        print(response.status_code, flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
