"""KFP component: upload the exported model to the Hugging Face Hub (korlm push).

The token is read inside the task from the environment (a Kubernetes secret or Secret
Manager on Vertex), never passed as a parameter, so it is not in the compiled pipeline.
"""

from kfp.dsl import Artifact, Input, Model, Output


def push(hf_model: Input[Model], params: dict, plan: Output[Artifact]):
    """Dry run by default: record the files and commit message that would be uploaded."""
    from korlm.config import section_params

    params = section_params("push", params)
    from korlm.push import push_model

    result = push_model(hf_model.path, params["repo_id"], plan.path,
                        dry_run=params.get("dry_run", True), private=params.get("private", True),
                        token_env=params.get("token_env", "HF_TOKEN"))
    plan.metadata.update({"repo_id": result["repo_id"], "dry_run": result["dry_run"]})
