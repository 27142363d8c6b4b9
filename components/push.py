"""KFP component: upload the exported model to the Hugging Face Hub (korlm push).

The token is read inside the task from the environment, a mounted Kubernetes secret file
or Secret Manager on Vertex, never passed as a parameter, so it is not in the compiled
pipeline and never a component output.
"""

from kfp.dsl import Artifact, Input, Model, Output


def push(hf_model: Input[Model], params: dict, run_id: str, config_hash: str, plan: Output[Artifact],
         repo_id: str = None, dry_run: bool = None):
    """Dry run by default: record the files and commit message that would be uploaded."""
    from korlm.config import section_params

    params = section_params("push", params, {"repo_id": repo_id, "dry_run": dry_run})
    from korlm.hub.push import push_model

    result = push_model(hf_model.path, params["repo_id"], plan.path,
                        dry_run=params.get("dry_run", True), private=params.get("private", True),
                        revision=params.get("revision"), tag=params.get("tag_runs", True),
                        token_env=params.get("token_env", "HF_TOKEN"), token_file=params.get("token_file"),
                        token_secret=params.get("token_secret"), retries=params.get("retries", 4),
                        run_id=run_id or None, config_hash=config_hash or None,
                        overwrite=True)  # KFP owns the path: a retry replaces it
    plan.metadata.update({"repo_id": result["repo_id"], "dry_run": result["dry_run"],
                          "commit_message": result["commit_message"]})
