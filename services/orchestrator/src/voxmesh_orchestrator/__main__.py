from voxmesh.core.service import run


def main() -> None:
    from voxmesh_orchestrator.server import main as serve

    run("orchestrator", serve)


if __name__ == "__main__":
    main()
