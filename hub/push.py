"""Upload hub/<model>/ (written by mlan-export) to the Hugging Face Hub; same as the ``mlan-push`` command.

    python hub/push.py --model mlan_resnet20_cifar10 --token hf_...   # or HF_TOKEN=... in the environment
"""
import sys

from mlan_timm.export import push_main

if __name__ == '__main__':
    sys.exit(push_main())
