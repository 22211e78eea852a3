import pytest

from export.trained import Project, fraud_and_amount


@pytest.fixture(scope="session")
def project_dir(tmp_path_factory, fraud_frame) -> Project:
    return fraud_and_amount(tmp_path_factory.mktemp("batch"), fraud_frame)
